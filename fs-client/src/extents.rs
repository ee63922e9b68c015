//! Buffered bytes of one file, as non-overlapping extents: what the application wrote and
//! the cluster does not have yet. Later writes overwrite earlier ones where they overlap.

use bytes::Bytes;
use std::collections::BTreeMap;

/// `B` is `Vec<u8>` while writes land; a batch being flushed is frozen into `Bytes`, so its
/// runs can go to the cluster as views, with no copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extents<B = Vec<u8>> {
    /// start offset -> bytes; extents never overlap or touch.
    map: BTreeMap<u64, B>,
    bytes: u64,
}

impl<B: AsRef<[u8]>> Extents<B> {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes buffered.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// One past the last buffered byte (0 when empty).
    pub fn end(&self) -> u64 {
        self.map
            .iter()
            .next_back()
            .map_or(0, |(s, d)| s + d.as_ref().len() as u64)
    }

    /// Each extent: its start and its bytes, in order of offset.
    pub fn runs(&self) -> impl Iterator<Item = (u64, &B)> {
        self.map.iter().map(|(&s, d)| (s, d))
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.runs().map(|(s, d)| (s, d.as_ref()))
    }

    /// The buffered bytes inside `offset..end`, as their own extents.
    pub fn clip(&self, offset: u64, end: u64) -> Extents {
        let mut out = Extents::default();
        let first = self
            .map
            .range(..=offset)
            .next_back()
            .map_or(offset, |(&s, _)| s);
        for (&s, d) in self.map.range(first..end) {
            let d = d.as_ref();
            let (lo, hi) = (s.max(offset), (s + d.len() as u64).min(end));
            if lo < hi {
                out.write(lo, &d[(lo - s) as usize..(hi - s) as usize]);
            }
        }
        out
    }

    /// Copies the buffered bytes that fall in `offset..offset+out.len()` over `out`.
    pub fn overlay(&self, offset: u64, out: &mut [u8]) {
        for (s, d) in self.clip(offset, offset + out.len() as u64).iter() {
            let at = (s - offset) as usize;
            out[at..at + d.len()].copy_from_slice(d);
        }
    }
}

impl Extents {
    /// The same extents, immutable and shareable without copying their bytes.
    pub fn freeze(self) -> Extents<Bytes> {
        Extents {
            map: self
                .map
                .into_iter()
                .map(|(s, d)| (s, Bytes::from(d)))
                .collect(),
            bytes: self.bytes,
        }
    }

    /// Records `data` at `offset`, merging with every extent it overlaps or touches.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Extents that overlap or touch [offset, end].
        let first = self
            .map
            .range(..=offset)
            .next_back()
            .filter(|(&s, d)| s + d.len() as u64 >= offset)
            .map(|(&s, _)| s)
            .unwrap_or(offset);
        let touched: Vec<u64> = self.map.range(first..=end).map(|(&s, _)| s).collect();
        if touched.len() == 1 && touched[0] <= offset {
            // Fast path: inside or extending one extent (sequential appends land here).
            let s = touched[0];
            let buf = self.map.get_mut(&s).expect("just found");
            // The extent reaches `offset`, so `at` is within it or at its end: overwrite
            // what overlaps, append the rest (no zeroing before the copy).
            let (at, old) = ((offset - s) as usize, buf.len());
            let overlap = (old - at).min(data.len());
            buf[at..at + overlap].copy_from_slice(&data[..overlap]);
            buf.extend_from_slice(&data[overlap..]);
            self.bytes += (buf.len() - old) as u64;
            return;
        }
        let start = touched.first().map_or(offset, |&s| s.min(offset));
        let mut merged_end = end;
        let mut pieces = Vec::new();
        for s in touched {
            let d = self.map.remove(&s).expect("just found");
            self.bytes -= d.len() as u64;
            merged_end = merged_end.max(s + d.len() as u64);
            pieces.push((s, d));
        }
        let mut buf = vec![0u8; (merged_end - start) as usize];
        for (s, d) in pieces {
            let at = (s - start) as usize;
            buf[at..at + d.len()].copy_from_slice(&d);
        }
        let at = (offset - start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        self.bytes += buf.len() as u64;
        self.map.insert(start, buf);
    }

    /// Drops everything at or past `size` (a truncation).
    pub fn truncate(&mut self, size: u64) {
        let tail = self.map.split_off(&size);
        self.bytes -= tail.values().map(|d| d.len() as u64).sum::<u64>();
        if let Some((&s, d)) = self.map.iter_mut().next_back() {
            if s + d.len() as u64 > size {
                self.bytes -= s + d.len() as u64 - size;
                d.truncate((size - s) as usize);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Extents read back exactly like a plain byte array written the same way.
        #[test]
        fn behaves_like_a_byte_array(ops in proptest::collection::vec((0u64..600, 0usize..80, any::<u8>(), 0u8..8), 1..40)) {
            let mut ext = Extents::default();
            let mut model: Vec<Option<u8>> = vec![None; 800];
            for (off, len, byte, kind) in ops {
                if kind == 0 {
                    ext.truncate(off);
                    model.iter_mut().skip(off as usize).for_each(|b| *b = None);
                } else {
                    ext.write(off, &vec![byte; len]);
                    model[off as usize..off as usize + len].iter_mut().for_each(|b| *b = Some(byte));
                }
            }
            let mut out = vec![0xAAu8; 800];
            ext.overlay(0, &mut out);
            for (i, m) in model.iter().enumerate() {
                prop_assert_eq!(out[i], m.unwrap_or(0xAA), "byte {}", i);
            }
            // Frozen, the same extents read back the same.
            let frozen = ext.clone().freeze();
            let mut again = vec![0xAAu8; 800];
            frozen.overlay(0, &mut again);
            prop_assert_eq!(&out, &again);
            prop_assert_eq!((frozen.bytes(), frozen.end()), (ext.bytes(), ext.end()));
            let covered = model.iter().filter(|b| b.is_some()).count() as u64;
            prop_assert_eq!(ext.bytes(), covered);
            let last = model.iter().rposition(|b| b.is_some()).map_or(0, |i| i as u64 + 1);
            prop_assert!(ext.end() >= last);
            // Extents never overlap or touch.
            let spans: Vec<(u64, u64)> = ext.iter().map(|(s, d)| (s, s + d.len() as u64)).collect();
            for w in spans.windows(2) {
                prop_assert!(w[0].1 < w[1].0);
            }
        }
    }
}
