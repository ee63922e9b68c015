//! Where each byte of a slice lives among its data shards.
//!
//! Data is striped: a stripe is one unit of `stripe_unit` bytes on each of the K data shards,
//! so a large read fans out over all of them. The tail that does not fill a whole stripe is
//! split evenly (units of `ceil(rest / K)` bytes), which keeps a 100-byte slice at 25 bytes
//! per shard instead of a whole unit each. All shards of a slice have the same length, and a
//! byte at position `p` of any shard depends only on bytes at position `p` of the others,
//! so any range of a lost shard is rebuilt from the same range of K survivors.

use crate::policy::Policy;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Largest slice: one chunk of file offset.
pub const MAX_SLICE_BYTES: u64 = 64 << 20;
pub const MIN_STRIPE_UNIT: u32 = 4 << 10;
pub const MAX_STRIPE_UNIT: u32 = 4 << 20;
pub const DEFAULT_STRIPE_UNIT: u32 = 256 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawLayout")]
pub struct SliceLayout {
    pub policy: Policy,
    /// Bytes of file data in the slice.
    pub data_len: u64,
    pub stripe_unit: u32,
}

#[derive(Deserialize)]
struct RawLayout {
    policy: Policy,
    data_len: u64,
    stripe_unit: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("slice length {0} is outside 1..={MAX_SLICE_BYTES}")]
    Length(u64),
    #[error("stripe unit {0} is not a power of two in {MIN_STRIPE_UNIT}..={MAX_STRIPE_UNIT}")]
    StripeUnit(u32),
    #[error("bytes of data shard {0} are missing or of the wrong length")]
    MissingShard(usize),
    #[error("range {offset}+{len} is outside the slice of {data_len} bytes")]
    Range {
        offset: u64,
        len: u64,
        data_len: u64,
    },
}

impl TryFrom<RawLayout> for SliceLayout {
    type Error = LayoutError;
    fn try_from(raw: RawLayout) -> Result<Self, Self::Error> {
        SliceLayout::new(raw.policy, raw.data_len, raw.stripe_unit)
    }
}

/// A run of slice bytes that sits contiguously on one data shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub shard: usize,
    pub shard_offset: u64,
    pub slice_offset: u64,
    pub len: u64,
}

impl SliceLayout {
    pub fn new(policy: Policy, data_len: u64, stripe_unit: u32) -> Result<Self, LayoutError> {
        let layout = SliceLayout {
            policy,
            data_len,
            stripe_unit,
        };
        layout.check()?;
        Ok(layout)
    }

    /// Whether the fields make a layout `new` would have made (the fields are public).
    pub fn check(&self) -> Result<(), LayoutError> {
        if self.data_len == 0 || self.data_len > MAX_SLICE_BYTES {
            return Err(LayoutError::Length(self.data_len));
        }
        if !self.stripe_unit.is_power_of_two()
            || !(MIN_STRIPE_UNIT..=MAX_STRIPE_UNIT).contains(&self.stripe_unit)
        {
            return Err(LayoutError::StripeUnit(self.stripe_unit));
        }
        Ok(())
    }

    fn k(&self) -> u64 {
        self.policy.data_shards() as u64
    }

    fn unit(&self) -> u64 {
        self.stripe_unit as u64
    }

    fn full_stripes(&self) -> u64 {
        self.data_len / (self.k() * self.unit())
    }

    /// Unit size of the final, partial stripe (0 when the slice ends on a stripe boundary).
    fn tail_unit(&self) -> u64 {
        let rest = self.data_len - self.full_stripes() * self.k() * self.unit();
        rest.div_ceil(self.k())
    }

    /// Length of every shard (data and parity) of this slice.
    pub fn shard_len(&self) -> u64 {
        self.full_stripes() * self.unit() + self.tail_unit()
    }

    /// Total bytes stored for the slice across all its shards.
    pub fn stored_bytes(&self) -> u64 {
        self.shard_len() * self.policy.total_shards() as u64
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), LayoutError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.data_len => Ok(()),
            _ => Err(LayoutError::Range {
                offset,
                len,
                data_len: self.data_len,
            }),
        }
    }

    /// The piece holding slice byte `x`, running to the end of its unit (or of the slice).
    fn piece_at(&self, x: u64) -> Piece {
        let (k, u) = (self.k(), self.unit());
        let full = self.full_stripes() * k * u;
        let (shard, shard_offset, run) = if x < full {
            let within = x % (k * u);
            let stripe = x / (k * u);
            (within / u, stripe * u + within % u, u - within % u)
        } else {
            let tail = self.tail_unit();
            let within = x - full;
            (
                within / tail,
                self.full_stripes() * u + within % tail,
                tail - within % tail,
            )
        };
        Piece {
            shard: shard as usize,
            shard_offset,
            slice_offset: x,
            len: run.min(self.data_len - x),
        }
    }

    /// The pieces of slice bytes `offset..offset+len`, in slice order.
    pub fn pieces(&self, offset: u64, len: u64) -> Result<Vec<Piece>, LayoutError> {
        self.check_range(offset, len)?;
        let mut out = Vec::new();
        let end = offset + len;
        let mut x = offset;
        while x < end {
            let mut p = self.piece_at(x);
            p.len = p.len.min(end - x);
            x += p.len;
            out.push(p);
        }
        Ok(out)
    }

    /// For each data shard, the contiguous shard range the slice range touches (the pieces of
    /// one shard inside a contiguous slice range are always adjacent on that shard).
    pub fn shard_ranges(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Option<Range<u64>>>, LayoutError> {
        let mut ranges: Vec<Option<Range<u64>>> = vec![None; self.policy.data_shards()];
        for p in self.pieces(offset, len)? {
            let r = &mut ranges[p.shard];
            let piece = p.shard_offset..p.shard_offset + p.len;
            *r = Some(match r.take() {
                None => piece,
                Some(have) => have.start.min(piece.start)..have.end.max(piece.end),
            });
        }
        Ok(ranges)
    }

    /// Puts slice bytes `offset..offset+len` back together from the data shard ranges that
    /// `shard_ranges` named: `ranges[i]` and `bufs[i]` are shard i's range and its bytes.
    pub fn assemble<B: AsRef<[u8]>>(
        &self,
        offset: u64,
        len: u64,
        ranges: &[Option<Range<u64>>],
        bufs: &[Option<B>],
    ) -> Result<Vec<u8>, LayoutError> {
        // Pieces come in slice order, each starting where the last ended: appending them
        // writes every byte once, with no zeroing first.
        let mut out = Vec::with_capacity(len as usize);
        for p in self.pieces(offset, len)? {
            let (Some(range), Some(buf)) = (&ranges[p.shard], &bufs[p.shard]) else {
                return Err(LayoutError::MissingShard(p.shard));
            };
            if buf.as_ref().len() as u64 != range.end - range.start {
                return Err(LayoutError::MissingShard(p.shard));
            }
            debug_assert_eq!(p.slice_offset - offset, out.len() as u64);
            let s = (p.shard_offset - range.start) as usize;
            out.extend_from_slice(&buf.as_ref()[s..s + p.len as usize]);
        }
        Ok(out)
    }

    /// Cuts slice bytes into the K data shards, zero-padded to `shard_len`.
    pub fn split(&self, data: &[u8]) -> Result<Vec<Vec<u8>>, LayoutError> {
        if data.len() as u64 != self.data_len {
            return Err(LayoutError::Length(data.len() as u64));
        }
        let shard_len = self.shard_len() as usize;
        let mut shards: Vec<Vec<u8>> = (0..self.policy.data_shards())
            .map(|_| Vec::with_capacity(shard_len))
            .collect();
        // In slice order, each shard's pieces follow one another on the shard: appending
        // writes every byte once; only the padding is zeroed.
        for p in self.pieces(0, self.data_len)? {
            let shard = &mut shards[p.shard];
            debug_assert_eq!(p.shard_offset, shard.len() as u64);
            let d = p.slice_offset as usize;
            shard.extend_from_slice(&data[d..d + p.len as usize]);
        }
        for shard in &mut shards {
            shard.resize(shard_len, 0);
        }
        Ok(shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout(policy: &str, len: u64, unit: u32) -> SliceLayout {
        SliceLayout::new(policy.parse().unwrap(), len, unit).unwrap()
    }

    #[test]
    fn small_slice_is_split_evenly() {
        let l = layout("rs:4+2", 100, 4096);
        assert_eq!(l.shard_len(), 25);
        assert_eq!(l.stored_bytes(), 150);
        let l = layout("rs:4+2", 10, 4096);
        assert_eq!(l.shard_len(), 3);
    }

    #[test]
    fn mirror_shard_is_the_whole_slice() {
        let l = layout("mirror:3", 1_000_000, 65536);
        assert_eq!(l.shard_len(), 1_000_000);
        assert_eq!(l.shard_ranges(5, 700_000).unwrap(), vec![Some(5..700_005)]);
    }

    #[test]
    fn full_stripes_rotate_over_shards() {
        let l = layout("rs:2+1", 4 * 4096 + 10, 4096);
        let p = l.pieces(0, l.data_len).unwrap();
        let shards: Vec<usize> = p.iter().map(|p| p.shard).collect();
        assert_eq!(shards, vec![0, 1, 0, 1, 0, 1]);
        assert_eq!(p[2].shard_offset, 4096);
        assert_eq!(p[4].shard_offset, 8192);
        assert_eq!((p[4].len, p[5].len), (5, 5));
        assert_eq!(l.shard_len(), 8192 + 5);
    }

    #[test]
    fn rejects_bad_layouts_and_ranges() {
        let p: Policy = "rs:4+2".parse().unwrap();
        assert!(SliceLayout::new(p, 0, 4096).is_err());
        assert!(SliceLayout::new(p, MAX_SLICE_BYTES + 1, 4096).is_err());
        assert!(SliceLayout::new(p, 10, 5000).is_err());
        let l = layout("rs:4+2", 100, 4096);
        assert!(l.pieces(90, 11).is_err());
        assert!(l.pieces(u64::MAX, 2).is_err());
    }

    proptest! {
        /// Every byte lands exactly once, inside its shard, and pieces of one shard are adjacent.
        #[test]
        fn pieces_cover_range_exactly(k in 1u8..10, len in 1u64..200_000, unit_pow in 12u32..16,
                                      a in 0u64..200_000, b in 0u64..200_000) {
            let l = SliceLayout::new(Policy::ReedSolomon { data: k, parity: 1 }, len, 1 << unit_pow).unwrap();
            let (start, end) = { let (a, b) = (a % len, b % len); (a.min(b), a.max(b) + 1) };
            let pieces = l.pieces(start, end - start).unwrap();
            let mut x = start;
            for p in &pieces {
                prop_assert_eq!(p.slice_offset, x);
                prop_assert!(p.shard_offset + p.len <= l.shard_len());
                x += p.len;
            }
            prop_assert_eq!(x, end);
            let ranges = l.shard_ranges(start, end - start).unwrap();
            let covered: u64 = ranges.iter().flatten().map(|r| r.end - r.start).sum();
            prop_assert_eq!(covered, end - start);
        }
    }
}
