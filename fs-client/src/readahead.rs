//! Read-ahead for sequential readers. The kernel asks FUSE for at most its own readahead
//! window (128 KiB) at a time, which leaves a remote filesystem waiting on one round trip
//! after another. A file read sequentially here has whole blocks fetched ahead of the
//! reader, the window doubling up to [`MAX_WINDOW`]; random reads fetch only what they ask.
//! Every cached block is dropped when the file's cached contents are (a commit here, an
//! open, a lock, a truncation), so nothing fetched before a change is served after it.

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use lattice_common::fs::Errno;
use std::collections::BTreeMap;

/// Bytes fetched per read-ahead block.
pub const BLOCK: u64 = 4 << 20;
/// Furthest the read-ahead runs ahead of the reader.
pub const MAX_WINDOW: u64 = 32 << 20;
/// How far from the stream's position a read may land and still continue it.
const NEAR: u64 = 2 << 20;

pub type Fetch = Shared<BoxFuture<'static, Result<Bytes, Errno>>>;

#[derive(Default)]
pub struct ReadAhead {
    /// Where the next read of a sequential reader starts.
    next: u64,
    window: u64,
    /// Block start -> its fetch (running or done).
    blocks: BTreeMap<u64, Fetch>,
}

impl ReadAhead {
    pub fn invalidate(&mut self) {
        self.blocks.clear();
    }

    /// Records a read of `offset..end`; returns the read-ahead window if it continues a
    /// sequential stream. A stream begins with a read from the start of the file or one
    /// that starts exactly where the last ended; once begun, the kernel sends several reads
    /// at once and they may arrive a little out of order, so a read near where the stream
    /// is continues it. Near alone begins nothing: random readers (several sharing a file)
    /// land near one another's last read often enough that each such read would fetch a
    /// whole window for nothing.
    pub fn observe(&mut self, offset: u64, end: u64) -> Option<u64> {
        let near = offset.abs_diff(self.next) <= NEAR;
        let sequential = offset == 0 || offset == self.next || (near && self.window > 0);
        self.next = if near { self.next.max(end) } else { end };
        self.window = if sequential {
            (self.window * 2).clamp(BLOCK, MAX_WINDOW)
        } else {
            0
        };
        sequential.then_some(self.window)
    }

    /// The fetches of the blocks covering `offset..end` and the window after it (starting
    /// those not yet running with `start`), dropping blocks the reader has passed. Blocks
    /// stop at `size`.
    pub fn blocks(
        &mut self,
        offset: u64,
        end: u64,
        window: u64,
        size: u64,
        mut start: impl FnMut(u64, u64) -> BoxFuture<'static, Result<Bytes, Errno>>,
    ) -> Vec<(u64, Fetch)> {
        let first = offset / BLOCK * BLOCK;
        // Blocks well behind the reader go (not just behind: reads arrive out of order).
        let keep_from = offset.saturating_sub(NEAR) / BLOCK * BLOCK;
        self.blocks = self.blocks.split_off(&keep_from);
        let ahead = (end + window).min(size);
        let mut needed = Vec::new();
        let mut b = first;
        while b < ahead {
            let len = BLOCK.min(size - b);
            let fetch = self
                .blocks
                .entry(b)
                .or_insert_with(|| start(b, len).shared())
                .clone();
            if b < end {
                needed.push((b, fetch));
            }
            b += BLOCK;
        }
        needed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_grows_for_sequential_reads_and_closes_for_random_ones() {
        let mut ra = ReadAhead::default();
        assert_eq!(ra.observe(0, 131072), Some(BLOCK));
        assert_eq!(ra.observe(131072, 262144), Some(2 * BLOCK));
        for _ in 0..10 {
            let next = ra.next;
            ra.observe(next, next + 131072);
        }
        assert_eq!(ra.window, MAX_WINDOW);
        // Reads a little out of order still continue it.
        let next = ra.next;
        assert!(ra.observe(next + 131072, next + 262144).is_some());
        assert!(ra.observe(next, next + 131072).is_some());
        assert_eq!(ra.observe(10 << 30, (10 << 30) + 4096), None);
    }

    #[test]
    fn a_stream_begins_where_the_last_read_ended_and_not_merely_near_it() {
        let mut ra = ReadAhead::default();
        let at = 100 << 20;
        assert_eq!(ra.observe(at, at + 4096), None);
        // Random readers: near the last read, but not where it ended.
        assert_eq!(ra.observe(at + 65536, at + 69632), None);
        assert_eq!(ra.observe(at - 8192, at - 4096), None);
        // A reader that goes on from where the reads got to begins a stream.
        assert_eq!(ra.observe(at + 69632, at + 131072), Some(BLOCK));
    }

    #[test]
    fn blocks_are_started_once_and_dropped_well_behind_the_reader() {
        let mut ra = ReadAhead::default();
        let started = std::sync::Mutex::new(Vec::new());
        let start = |b: u64, len: u64| {
            started.lock().unwrap().push((b, len));
            async move { Ok(Bytes::from(vec![0u8; len as usize])) }.boxed()
        };
        let size = 5 * BLOCK + 10;
        assert_eq!(ra.blocks(0, 100, BLOCK, size, start).len(), 1);
        ra.blocks(50, 200, 2 * BLOCK, size, start);
        assert_eq!(
            *started.lock().unwrap(),
            vec![(0, BLOCK), (BLOCK, BLOCK), (2 * BLOCK, BLOCK)]
        );
        ra.blocks(5 * BLOCK, 5 * BLOCK + 10, BLOCK, size, start);
        assert_eq!(started.lock().unwrap().last(), Some(&(5 * BLOCK, 10)));
        assert_eq!(
            ra.blocks.keys().copied().collect::<Vec<_>>(),
            vec![5 * BLOCK]
        );
    }
}
