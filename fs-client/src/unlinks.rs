//! Unlinks answered before the metaservers apply them. An `rm` of many files waited one
//! Raft round per name; now the mount answers an unlink at once when it knows which inode
//! the name leads to (and the kernel has checked permissions: mounts always use
//! `default_permissions`), and sends the unlinks it answered in batches, one batch out at a
//! time: a batch leaves as soon as the one before it is applied, so many names share a
//! Raft round.
//!
//! What this mount sees stays exact: a name waiting here is absent to its lookups, and
//! whatever else could show it (listings, the inode's attributes, every other change,
//! locks, a directory's fsync) first waits until it is applied. A directory's attributes
//! do not wait (the kernel asks for them before each unlink in it, to check permissions):
//! they show the time of its latest unlink answered here, the time the metaservers then
//! give it (each unlink carries it). Other
//! mounts see a name go when its batch is applied, a Raft round or so later, well within
//! the time they may keep the entry cached anyway. A name is removed only if it still leads
//! to the inode it led to here: a file another mount put in its place meanwhile stays. An
//! unlink the metaservers refuse (what the kernel checked changed meanwhile) is logged,
//! counted and reported by the next fsync of a directory, as a failed write-back of data is
//! by the next fsync of the file. A mount that dies with unlinks waiting leaves their names
//! in place, as a crash before a directory's fsync may on a local filesystem.
//!
//! This module is the bookkeeping (pure, tested here); the client sends the batches.

use lattice_common::fs::{Errno, Timestamp};
use lattice_common::ids::InodeId;
use lattice_common::wire::meta::{Unlinked, MAX_UNLINKS};
use std::collections::{HashMap, HashSet, VecDeque};

/// Unlinks waiting at most; the next one waits until those are applied.
pub const MAX_WAITING: usize = 4 * MAX_UNLINKS;

#[derive(Default)]
pub struct Unlinks {
    /// Answered and not sent yet, oldest first.
    queued: VecDeque<Unlinked>,
    /// The batch out, if any.
    sending: Vec<Unlinked>,
    /// Unlinks answered so far: the n-th one answered is number n.
    answered: u64,
    /// The first `applied` answered are applied (or were given up on).
    applied: u64,
    names: HashSet<(InodeId, Vec<u8>)>,
    /// Inodes unlinked, with how many waiting unlinks each (hard links).
    inos: HashMap<InodeId, usize>,
    /// Directories unlinked from: how many waiting unlinks, and the latest one's time.
    dirs: HashMap<InodeId, (usize, Timestamp)>,
    /// The first refusal not reported to a directory fsync yet.
    refused: Option<Errno>,
}

impl Unlinks {
    /// Whether another unlink must wait for the waiting ones to be applied first.
    pub fn full(&self) -> bool {
        self.queued.len() + self.sending.len() >= MAX_WAITING
    }

    /// Takes an answered unlink; returns its number. The caller made room (`full`).
    pub fn push(&mut self, u: Unlinked) -> u64 {
        debug_assert!(!self.full());
        self.names.insert((u.parent, u.name.clone()));
        *self.inos.entry(u.ino).or_default() += 1;
        let dir = self.dirs.entry(u.parent).or_insert((0, u.at));
        dir.0 += 1;
        dir.1 = dir.1.max(u.at);
        self.queued.push_back(u);
        self.answered += 1;
        self.answered
    }

    /// Whether `name` in `parent` is unlinked here and not applied yet.
    pub fn hides(&self, parent: InodeId, name: &[u8]) -> bool {
        // Lookups of other names in a directory being emptied are the usual case.
        !self.names.is_empty() && self.names.contains(&(parent, name.to_vec()))
    }

    /// Whether a waiting unlink changes `ino`'s link count.
    pub fn unlinks(&self, ino: InodeId) -> bool {
        self.inos.contains_key(&ino)
    }

    /// The time of the latest waiting unlink from directory `dir`, if any.
    pub fn dir_time(&self, dir: InodeId) -> Option<Timestamp> {
        self.dirs.get(&dir).map(|(_, at)| *at)
    }

    /// How many unlinks were answered so far (wait for `applied` to reach it).
    pub fn answered(&self) -> u64 {
        self.answered
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The next batch to send (the oldest waiting, at most [`MAX_UNLINKS`]), unless one is
    /// out already or none wait.
    pub fn next_batch(&mut self) -> Option<Vec<Unlinked>> {
        if !self.sending.is_empty() || self.queued.is_empty() {
            return None;
        }
        let n = self.queued.len().min(MAX_UNLINKS);
        self.sending = self.queued.drain(..n).collect();
        Some(self.sending.clone())
    }

    /// The batch out was applied; `refused` is its first refusal, if any.
    pub fn done(&mut self, refused: Option<Errno>) {
        for u in std::mem::take(&mut self.sending) {
            self.names.remove(&(u.parent, u.name));
            if let Some(n) = self.inos.get_mut(&u.ino) {
                *n -= 1;
                if *n == 0 {
                    self.inos.remove(&u.ino);
                }
            }
            if let Some((n, _)) = self.dirs.get_mut(&u.parent) {
                *n -= 1;
                if *n == 0 {
                    self.dirs.remove(&u.parent);
                }
            }
            self.applied += 1;
        }
        self.refused = self.refused.or(refused);
    }

    /// The first refusal since the last call.
    pub fn take_refused(&mut self) -> Option<Errno> {
        self.refused.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unlink(parent: u64, name: &str, ino: u64) -> Unlinked {
        Unlinked {
            parent: InodeId(parent),
            name: name.as_bytes().to_vec(),
            ino: InodeId(ino),
            at: Timestamp {
                secs: ino as i64,
                nanos: 0,
            },
        }
    }

    #[test]
    fn names_stay_hidden_until_their_batch_is_applied() {
        let mut u = Unlinks::default();
        assert_eq!(u.push(unlink(1, "a", 10)), 1);
        assert!(u.hides(InodeId(1), b"a") && !u.hides(InodeId(1), b"b"));
        assert!(u.unlinks(InodeId(10)) && !u.unlinks(InodeId(11)) && !u.unlinks(InodeId(1)));
        assert_eq!(u.dir_time(InodeId(1)).map(|t| t.secs), Some(10));
        assert_eq!(u.dir_time(InodeId(10)), None);
        let first = u.next_batch().unwrap();
        assert_eq!(first.len(), 1);
        // Answered while the first batch is out: waits for the next one.
        assert_eq!(u.push(unlink(1, "b", 11)), 2);
        assert!(u.next_batch().is_none(), "one batch out at a time");
        u.done(None);
        assert_eq!(u.applied(), 1);
        assert!(!u.hides(InodeId(1), b"a") && u.hides(InodeId(1), b"b"));
        assert!(!u.unlinks(InodeId(10)) && u.unlinks(InodeId(11)));
        assert_eq!(u.dir_time(InodeId(1)).map(|t| t.secs), Some(11));
        assert_eq!(u.next_batch().unwrap(), vec![unlink(1, "b", 11)]);
        u.done(Some(Errno::ACCES));
        assert_eq!(u.applied(), u.answered());
        assert_eq!(u.dir_time(InodeId(1)), None);
        assert_eq!(u.take_refused(), Some(Errno::ACCES));
        assert_eq!(u.take_refused(), None);
        assert!(u.next_batch().is_none());
    }

    #[test]
    fn batches_are_bounded_and_keep_the_order_answered() {
        let mut u = Unlinks::default();
        let mut n = 0;
        while !u.full() {
            u.push(unlink(1, &format!("f{n}"), 100 + n));
            n += 1;
        }
        assert_eq!(n as usize, MAX_WAITING);
        let mut seen = 0;
        while let Some(batch) = u.next_batch() {
            assert!(batch.len() <= MAX_UNLINKS);
            for e in &batch {
                assert_eq!(e.ino, InodeId(100 + seen));
                seen += 1;
            }
            u.done(None);
        }
        assert_eq!(seen, n);
        assert!(!u.full() && u.dir_time(InodeId(1)).is_none());
    }

    #[test]
    fn two_links_of_one_inode_keep_it_unlinked_until_both_are_applied() {
        let mut u = Unlinks::default();
        u.push(unlink(1, "a", 10));
        u.next_batch();
        u.push(unlink(2, "b", 10));
        u.done(None);
        assert!(u.unlinks(InodeId(10)));
        assert!(u.dir_time(InodeId(1)).is_none() && u.dir_time(InodeId(2)).is_some());
        u.next_batch();
        u.done(None);
        assert!(!u.unlinks(InodeId(10)));
    }
}
