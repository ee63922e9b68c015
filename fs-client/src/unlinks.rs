//! Unlinks answered before the metaservers apply them. An `rm` of many files waited one
//! Raft round per name; now the mount answers an unlink at once when it knows which inode
//! the name leads to (and the kernel has checked permissions: mounts always use
//! `default_permissions`), and sends the unlinks it answered in batches, one batch out at a
//! time: a batch leaves as soon as the one before it is applied, so many names share a
//! Raft round. An rmdir goes the same way when this mount knows the directory is empty: it
//! listed it whole within the attribute timeout and removed every name listed since, adding
//! none (`rm -rf` lists each directory before removing it).
//!
//! What this mount sees stays exact: a name waiting here is absent to its lookups, and
//! whatever else could show it (listings, the inode's attributes, every other change,
//! locks, a directory's fsync) first waits until it is applied. A directory's attributes
//! do not wait (the kernel asks for them before each unlink in it, to check permissions):
//! they are the attributes it had when its first waiting unlink was answered (if fetched
//! within the attribute timeout; else they wait too), with the time of its latest waiting
//! unlink, the time the metaservers then give it (each unlink carries it), and its link
//! count less the subdirectories removed here. Other
//! mounts see a name go when its batch is applied, a Raft round or so later, well within
//! the time they may keep the entry cached anyway. A name is removed only if it still leads
//! to the inode it led to here: a file another mount put in its place meanwhile stays. An
//! unlink the metaservers refuse (what the kernel checked changed meanwhile) is logged,
//! counted and reported by the next fsync of a directory, as a failed write-back of data is
//! by the next fsync of the file. A mount that dies with unlinks waiting leaves their names
//! in place, as a crash before a directory's fsync may on a local filesystem.
//!
//! This module is the bookkeeping (pure, tested here); the client sends the batches.

use lattice_common::fs::{Attr, Errno, Timestamp};
use lattice_common::ids::InodeId;
use lattice_common::wire::meta::{Unlinked, MAX_UNLINKS};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Unlinks waiting at most; the next one waits until those are applied.
pub const MAX_WAITING: usize = 4 * MAX_UNLINKS;
/// Directories whose listing is kept at most (beyond it, all are forgotten).
const MAX_LISTED: usize = 4096;
/// Names kept of one listing at most (a bigger directory is not tracked).
pub const MAX_LISTED_NAMES: usize = 4096;

/// A directory with waiting unlinks in it.
struct Emptying {
    waiting: usize,
    /// The latest one's time.
    at: Timestamp,
    /// Its attributes when the first was answered, and when they were fetched.
    base: Option<(Attr, Instant)>,
    /// Subdirectories removed here since.
    subdirs: u32,
}

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
    dirs: HashMap<InodeId, Emptying>,
    /// The names of directories as this mount last listed them whole, less those it
    /// removed since, and when listed.
    listed: HashMap<InodeId, (HashSet<Vec<u8>>, Instant)>,
    /// The first refusal not reported to a directory fsync yet.
    refused: Option<Errno>,
}

impl Unlinks {
    /// Whether another unlink must wait for the waiting ones to be applied first.
    pub fn full(&self) -> bool {
        self.queued.len() + self.sending.len() >= MAX_WAITING
    }

    /// Takes an answered unlink; `parent` is what this mount holds of the directory's
    /// attributes (fetched when), unless it is changed already. Returns its number. The
    /// caller made room (`full`).
    pub fn push(&mut self, u: Unlinked, parent: Option<(Attr, Instant)>) -> u64 {
        debug_assert!(!self.full());
        self.removed(u.parent, &u.name);
        self.names.insert((u.parent, u.name.clone()));
        *self.inos.entry(u.ino).or_default() += 1;
        let dir = self.dirs.entry(u.parent).or_insert(Emptying {
            waiting: 0,
            at: u.at,
            base: parent,
            subdirs: 0,
        });
        dir.waiting += 1;
        dir.at = dir.at.max(u.at);
        dir.subdirs += u32::from(u.dir);
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

    /// Whether `dir` has waiting unlinks in it.
    pub fn emptying(&self, dir: InodeId) -> bool {
        self.dirs.contains_key(&dir)
    }

    /// Whether a waiting unlink changes what `ino` shows: its own link count, or (a
    /// directory) its entries and attributes.
    pub fn touches(&self, ino: InodeId) -> bool {
        self.emptying(ino) || self.unlinks(ino)
    }

    /// The attributes of a directory with waiting unlinks, as they will be once applied, and
    /// when those they start from were fetched: None if it has none, or its attributes were
    /// not fetched within `ttl` of `now`.
    pub fn dir_attr(&self, dir: InodeId, ttl: Duration, now: Instant) -> Option<(Attr, Instant)> {
        let d = self.dirs.get(&dir)?;
        let (base, fetched) = d.base.as_ref()?;
        if now.saturating_duration_since(*fetched) >= ttl {
            return None;
        }
        let mut a = base.clone();
        a.ctime = a.ctime.max(d.at);
        a.mtime = a.ctime;
        a.nlink = a.nlink.saturating_sub(d.subdirs).max(2);
        Some((a, *fetched))
    }

    /// Notes the whole listing of `dir`, taken at `now`.
    pub fn listed(&mut self, dir: InodeId, names: HashSet<Vec<u8>>, now: Instant) {
        if names.len() > MAX_LISTED_NAMES {
            return;
        }
        if self.listed.len() >= MAX_LISTED {
            self.listed.clear();
        }
        self.listed.insert(dir, (names, now));
    }

    /// This mount removed `name` from `dir`.
    pub fn removed(&mut self, dir: InodeId, name: &[u8]) {
        if let Some((names, _)) = self.listed.get_mut(&dir) {
            names.remove(name);
        }
    }

    /// This mount added a name to `dir` (or may have): its listing is no longer known.
    pub fn added(&mut self, dir: InodeId) {
        self.listed.remove(&dir);
    }

    /// Whether `dir` is known empty: listed whole within `ttl` and every name removed here
    /// since.
    pub fn known_empty(&self, dir: InodeId, ttl: Duration, now: Instant) -> bool {
        self.listed
            .get(&dir)
            .is_some_and(|(names, at)| names.is_empty() && now.saturating_duration_since(*at) < ttl)
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
            if let Some(d) = self.dirs.get_mut(&u.parent) {
                d.waiting -= 1;
                if d.waiting == 0 {
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
            dir: false,
            at: Timestamp {
                secs: ino as i64,
                nanos: 0,
            },
        }
    }

    #[test]
    fn names_stay_hidden_until_their_batch_is_applied() {
        let mut u = Unlinks::default();
        assert_eq!(u.push(unlink(1, "a", 10), None), 1);
        assert!(u.hides(InodeId(1), b"a") && !u.hides(InodeId(1), b"b"));
        assert!(u.unlinks(InodeId(10)) && !u.unlinks(InodeId(11)) && !u.unlinks(InodeId(1)));
        assert!(u.emptying(InodeId(1)) && !u.emptying(InodeId(10)));
        assert!(u.touches(InodeId(1)) && u.touches(InodeId(10)) && !u.touches(InodeId(11)));
        let first = u.next_batch().unwrap();
        assert_eq!(first.len(), 1);
        // Answered while the first batch is out: waits for the next one.
        assert_eq!(u.push(unlink(1, "b", 11), None), 2);
        assert!(u.next_batch().is_none(), "one batch out at a time");
        u.done(None);
        assert_eq!(u.applied(), 1);
        assert!(!u.hides(InodeId(1), b"a") && u.hides(InodeId(1), b"b"));
        assert!(!u.unlinks(InodeId(10)) && u.unlinks(InodeId(11)));
        assert!(u.emptying(InodeId(1)));
        assert_eq!(u.next_batch().unwrap(), vec![unlink(1, "b", 11)]);
        u.done(Some(Errno::ACCES));
        assert_eq!(u.applied(), u.answered());
        assert!(!u.emptying(InodeId(1)));
        assert_eq!(u.take_refused(), Some(Errno::ACCES));
        assert_eq!(u.take_refused(), None);
        assert!(u.next_batch().is_none());
    }

    #[test]
    fn batches_are_bounded_and_keep_the_order_answered() {
        let mut u = Unlinks::default();
        let mut n = 0;
        while !u.full() {
            u.push(unlink(1, &format!("f{n}"), 100 + n), None);
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
        assert!(!u.full() && !u.emptying(InodeId(1)));
    }

    #[test]
    fn a_directory_is_known_empty_once_every_name_listed_is_removed_here() {
        let mut u = Unlinks::default();
        let (t0, ttl) = (Instant::now(), Duration::from_secs(1));
        let dir = InodeId(5);
        let names = ["a", "b"].map(|n| n.as_bytes().to_vec()).into();
        u.listed(dir, names, t0);
        assert!(!u.known_empty(dir, ttl, t0));
        u.push(unlink(5, "a", 10), None);
        u.removed(dir, b"b");
        assert!(u.known_empty(dir, ttl, t0));
        assert!(!u.known_empty(dir, ttl, t0 + ttl), "an old listing");
        u.added(dir);
        assert!(!u.known_empty(dir, ttl, t0));
        assert!(!u.known_empty(InodeId(6), ttl, t0), "never listed");
    }

    #[test]
    fn a_directory_being_emptied_shows_the_times_and_link_count_it_will_have() {
        let mut u = Unlinks::default();
        let (t0, ttl) = (Instant::now(), Duration::from_secs(1));
        let base = crate::dir_attrs::tests::dir(1, 4);
        let rmdir = |name, ino| Unlinked {
            dir: true,
            ..unlink(1, name, ino)
        };
        u.push(rmdir("a", 10), Some((base, t0)));
        u.push(unlink(1, "f", 12), None);
        u.push(rmdir("b", 11), None);
        let (a, _) = u.dir_attr(InodeId(1), ttl, t0).unwrap();
        assert_eq!((a.nlink, a.mtime.secs, a.ctime.secs), (2, 12, 12));
        assert!(
            u.dir_attr(InodeId(1), ttl, t0 + ttl).is_none(),
            "fetched too long ago"
        );
        u.next_batch();
        u.done(None);
        assert!(u.dir_attr(InodeId(1), ttl, t0).is_none());
        // Not fetched when the first was answered: nothing to show.
        u.push(unlink(1, "g", 13), None);
        assert!(u.emptying(InodeId(1)) && u.dir_attr(InodeId(1), ttl, t0).is_none());
    }

    #[test]
    fn two_links_of_one_inode_keep_it_unlinked_until_both_are_applied() {
        let mut u = Unlinks::default();
        u.push(unlink(1, "a", 10), None);
        u.next_batch();
        u.push(unlink(2, "b", 10), None);
        u.done(None);
        assert!(u.unlinks(InodeId(10)));
        assert!(!u.emptying(InodeId(1)) && u.emptying(InodeId(2)));
        u.next_batch();
        u.done(None);
        assert!(!u.unlinks(InodeId(10)));
    }
}
