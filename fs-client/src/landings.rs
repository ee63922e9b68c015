//! Landings: the batches of written bytes this mount has committed, in order. A metaserver's
//! answer is as old as the query that asked for it, so the file size it carries misses every
//! batch that landed after the query was sent, and this mount no longer holds those bytes
//! once they landed. Unless the size is raised to their end, the kernel is told the file
//! shrank: a reader sees it short, and a process with the file mapped dies of SIGBUS.
//!
//! So a query notes the point it was sent at ([`Landings::now`]), and a size it brings back
//! is raised to the end of what landed after that point: an open file keeps its latest
//! landing with its buffers ([`crate::file_state::FileState::end_since`]); a file whose last
//! handle closed leaves it here.

use lattice_common::ids::InodeId;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Most closed files whose latest landing is kept. A query in flight across this many
/// later closes of written files could still bring back an old size.
const CLOSED_KEPT: usize = 4096;

/// A point in the sequence of this mount's landings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Landing(u64);

/// A file's latest landing, and the furthest end of the batches landed since its last
/// truncation here: the file is at least that long, unless another mount shrank it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Landed {
    pub at: Landing,
    pub end: u64,
}

impl Landed {
    /// The size an answer asked for at `asked` must show at least.
    pub fn end_since(this: Option<Landed>, asked: Landing) -> u64 {
        match this {
            Some(l) if l.at > asked => l.end,
            _ => 0,
        }
    }

    /// What is left of it after a truncation to `size`.
    pub fn truncate(this: Option<Landed>, size: u64) -> Option<Landed> {
        this.map(|l| Landed {
            end: l.end.min(size),
            ..l
        })
    }
}

#[derive(Default)]
pub struct Landings {
    clock: AtomicU64,
    closed: Mutex<Closed>,
}

#[derive(Default)]
struct Closed {
    ends: HashMap<InodeId, Landed>,
    /// Oldest first, to forget beyond [`CLOSED_KEPT`].
    order: VecDeque<(InodeId, Landing)>,
}

impl Landings {
    /// The point now: a query sent after this sees every batch landed before it.
    pub fn now(&self) -> Landing {
        Landing(self.clock.load(Ordering::SeqCst))
    }

    /// Counts one more landed batch (once it is committed); returns its point.
    pub fn land(&self) -> Landing {
        Landing(self.clock.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn closed(&self) -> std::sync::MutexGuard<'_, Closed> {
        self.closed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last handle on `ino` is closing: its latest landing stays here. Called before
    /// the file's state is dropped, so that an answer finds it in one place or the other.
    pub fn keep_closed(&self, ino: InodeId, landed: Landed) {
        let mut c = self.closed();
        c.ends.insert(ino, landed);
        c.order.push_back((ino, landed.at));
        while c.order.len() > CLOSED_KEPT {
            let Some((old, at)) = c.order.pop_front() else {
                break;
            };
            if c.ends.get(&old).is_some_and(|l| l.at == at) {
                c.ends.remove(&old);
            }
        }
    }

    /// The size an answer about closed file `ino` asked for at `asked` must show at least.
    pub fn closed_end_since(&self, ino: InodeId, asked: Landing) -> u64 {
        if self.now() == asked {
            return 0;
        }
        Landed::end_since(self.closed().ends.get(&ino).copied(), asked)
    }

    /// `ino` was truncated to `size` here.
    pub fn truncated(&self, ino: InodeId, size: u64) {
        let mut c = self.closed();
        if let Some(l) = c.ends.get_mut(&ino) {
            l.end = l.end.min(size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_raised_only_by_what_landed_after_it_was_asked() {
        let landings = Landings::default();
        let ino = InodeId(7);
        let before = landings.now();
        let at = landings.land();
        landings.keep_closed(ino, Landed { at, end: 8192 });
        assert_eq!(landings.closed_end_since(ino, before), 8192);
        assert_eq!(landings.closed_end_since(ino, landings.now()), 0);
        assert_eq!(landings.closed_end_since(InodeId(8), before), 0);
        landings.truncated(ino, 100);
        assert_eq!(landings.closed_end_since(ino, before), 100);
    }

    #[test]
    fn closed_files_are_forgotten_oldest_first_beyond_the_limit() {
        let landings = Landings::default();
        let start = landings.now();
        for i in 0..CLOSED_KEPT as u64 + 10 {
            let at = landings.land();
            landings.keep_closed(InodeId(i), Landed { at, end: 1 });
        }
        // A file closed again keeps its newer landing when its older one is forgotten.
        let at = landings.land();
        landings.keep_closed(InodeId(10), Landed { at, end: 2 });
        assert_eq!(landings.closed().ends.len(), CLOSED_KEPT);
        assert_eq!(landings.closed_end_since(InodeId(0), start), 0);
        assert_eq!(landings.closed_end_since(InodeId(10), start), 2);
        assert_eq!(landings.closed_end_since(InodeId(11), start), 1);
    }
}
