//! Cluster-wide file locks, held in the replicated state: byte ranges per (client session,
//! lock owner), shared or exclusive, split and merged like POSIX record locks. Record
//! (`fcntl`) and `flock` locks live in separate spaces that never conflict, as on Linux.
//! A client that goes silent loses all its locks.

use lattice_common::fs::{Errno, LockKind, LockRange, LockSpace};
use lattice_common::ids::{ClientId, InodeId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub client: ClientId,
    pub owner: u64,
    pub range: LockRange,
}

impl Held {
    fn mine(&self, client: ClientId, owner: u64) -> bool {
        self.client == client && self.owner == owner
    }

    fn overlaps(&self, want: &LockRange) -> bool {
        self.range.space == want.space
            && self.range.start <= want.end
            && want.start <= self.range.end
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockTable {
    by_inode: BTreeMap<InodeId, Vec<Held>>,
}

impl LockTable {
    /// The first lock of another owner that `want` would conflict with.
    pub fn conflict(
        &self,
        ino: InodeId,
        client: ClientId,
        owner: u64,
        want: &LockRange,
    ) -> Option<LockRange> {
        if want.kind == LockKind::Unlock {
            return None;
        }
        self.by_inode.get(&ino)?.iter().find_map(|h| {
            let clash = !h.mine(client, owner)
                && h.overlaps(want)
                && (h.range.kind == LockKind::Write || want.kind == LockKind::Write);
            clash.then_some(h.range)
        })
    }

    /// Takes, converts or drops `lock` for an owner; EAGAIN if another owner is in the way.
    pub fn set(
        &mut self,
        ino: InodeId,
        client: ClientId,
        owner: u64,
        lock: LockRange,
    ) -> Result<(), Errno> {
        if lock.start > lock.end {
            return Err(Errno::INVAL);
        }
        if self.conflict(ino, client, owner, &lock).is_some() {
            return Err(Errno::AGAIN);
        }
        let held = self.by_inode.entry(ino).or_default();
        // Cut the range out of the owner's own locks, keeping what lies either side.
        let mut kept = Vec::with_capacity(held.len() + 2);
        for h in held.drain(..) {
            if !h.mine(client, owner) || !h.overlaps(&lock) {
                kept.push(h);
                continue;
            }
            if h.range.start < lock.start {
                kept.push(Held {
                    range: LockRange {
                        end: lock.start - 1,
                        ..h.range
                    },
                    ..h
                });
            }
            if h.range.end > lock.end {
                kept.push(Held {
                    range: LockRange {
                        start: lock.end + 1,
                        ..h.range
                    },
                    ..h
                });
            }
        }
        if lock.kind != LockKind::Unlock {
            kept.push(Held {
                client,
                owner,
                range: lock,
            });
        }
        *held = merge(kept, client, owner);
        if held.is_empty() {
            self.by_inode.remove(&ino);
        }
        Ok(())
    }

    /// Drops every lock an owner holds on a file, of both spaces.
    pub fn release_owner(&mut self, ino: InodeId, client: ClientId, owner: u64) {
        if let Some(held) = self.by_inode.get_mut(&ino) {
            held.retain(|h| !h.mine(client, owner));
            if held.is_empty() {
                self.by_inode.remove(&ino);
            }
        }
    }

    /// Drops every lock of a client (it unmounted, or went silent).
    pub fn release_client(&mut self, client: ClientId) {
        self.by_inode.retain(|_, held| {
            held.retain(|h| h.client != client);
            !held.is_empty()
        });
    }

    /// The locks on a file, a line each, in the manner of `/proc/locks`:
    /// `1: FLOCK WRITE 4242 mount:1f2e3d4c 0 EOF` (kind, mode, the holder's pid on its
    /// mount, the mount's session, first and last byte). FCNTL covers POSIX and OFD locks.
    pub fn describe(&self, ino: InodeId) -> String {
        let held = self.by_inode.get(&ino).map_or(&[][..], Vec::as_slice);
        let mut out = String::new();
        for (n, h) in held.iter().enumerate() {
            let r = &h.range;
            let space = match r.space {
                LockSpace::Record => "FCNTL",
                LockSpace::Flock => "FLOCK",
            };
            let mode = match r.kind {
                LockKind::Write => "WRITE",
                _ => "READ ",
            };
            let end = match r.end {
                e if e >= i64::MAX as u64 => "EOF".to_string(),
                e => e.to_string(),
            };
            let line = format!(
                "{}: {space} {mode} {} mount:{:x} {} {end}\n",
                n + 1,
                r.pid,
                h.client.0,
                r.start
            );
            out.push_str(&line);
        }
        out
    }

    pub fn remove_inode(&mut self, ino: InodeId) {
        self.by_inode.remove(&ino);
    }

    /// Clients holding any lock.
    pub fn clients(&self) -> BTreeSet<ClientId> {
        self.by_inode.values().flatten().map(|h| h.client).collect()
    }
}

/// Joins an owner's adjacent or overlapping locks of the same kind.
fn merge(mut held: Vec<Held>, client: ClientId, owner: u64) -> Vec<Held> {
    held.sort_by_key(|h| (h.client, h.owner, h.range.space as u8, h.range.start));
    let mut out: Vec<Held> = Vec::with_capacity(held.len());
    for h in held {
        if let Some(last) = out.last_mut() {
            let joins = last.mine(client, owner)
                && h.mine(client, owner)
                && last.range.kind == h.range.kind
                && last.range.space == h.range.space
                && last.range.end.saturating_add(1) >= h.range.start;
            if joins {
                last.range.end = last.range.end.max(h.range.end);
                last.range.pid = h.range.pid;
                continue;
            }
        }
        out.push(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F: InodeId = InodeId(7);

    fn range(kind: LockKind, start: u64, end: u64) -> LockRange {
        spaced(LockSpace::Record, kind, start, end)
    }

    fn spaced(space: LockSpace, kind: LockKind, start: u64, end: u64) -> LockRange {
        LockRange {
            space,
            kind,
            start,
            end,
            pid: 1,
        }
    }

    #[test]
    fn shared_locks_share_and_exclusive_ones_do_not() {
        let mut t = LockTable::default();
        let (a, b) = (ClientId(1), ClientId(2));
        t.set(F, a, 1, range(LockKind::Read, 0, 99)).unwrap();
        t.set(F, b, 1, range(LockKind::Read, 50, 150)).unwrap();
        assert_eq!(
            t.set(F, b, 1, range(LockKind::Write, 0, 10)),
            Err(Errno::AGAIN)
        );
        assert_eq!(
            t.conflict(F, b, 1, &range(LockKind::Write, 0, 10)),
            Some(range(LockKind::Read, 0, 99))
        );
        // Same client, other owner: still a conflict (two processes on one mount).
        assert_eq!(
            t.set(F, a, 2, range(LockKind::Write, 120, 130)),
            Err(Errno::AGAIN)
        );
        t.set(F, a, 1, range(LockKind::Unlock, 0, u64::MAX))
            .unwrap();
        t.release_client(b);
        t.set(F, a, 2, range(LockKind::Write, 0, u64::MAX)).unwrap();
        assert_eq!(t.clients(), BTreeSet::from([a]));
    }

    #[test]
    fn flock_and_record_locks_never_meet() {
        let mut t = LockTable::default();
        let (a, b) = (ClientId(1), ClientId(2));
        let flock = |kind| spaced(LockSpace::Flock, kind, 0, u64::MAX);
        t.set(F, a, 1, range(LockKind::Write, 0, u64::MAX)).unwrap();
        t.set(F, b, 2, flock(LockKind::Write)).unwrap();
        assert_eq!(t.set(F, a, 3, flock(LockKind::Read)), Err(Errno::AGAIN));
        // One open file description holding both kinds: dropping one keeps the other.
        t.set(F, b, 2, range(LockKind::Unlock, 0, u64::MAX))
            .unwrap();
        t.set(F, a, 1, range(LockKind::Unlock, 0, u64::MAX))
            .unwrap();
        t.set(F, b, 2, range(LockKind::Write, 10, 20)).unwrap();
        t.set(F, b, 2, flock(LockKind::Unlock)).unwrap();
        assert_eq!(
            t.conflict(F, a, 1, &range(LockKind::Read, 15, 15)),
            Some(range(LockKind::Write, 10, 20))
        );
        assert_eq!(t.conflict(F, a, 1, &flock(LockKind::Write)), None);
        t.set(F, a, 7, flock(LockKind::Read)).unwrap();
        assert_eq!(
            t.describe(F),
            "1: FLOCK READ  1 mount:1 0 EOF\n2: FCNTL WRITE 1 mount:2 10 20\n"
        );
        t.release_owner(F, a, 7);
        t.release_owner(F, b, 2);
        assert!(t.clients().is_empty());
    }

    proptest! {
        /// Any sequence of lock changes by two owners in two spaces matches a per-byte
        /// model, and a refused change changes nothing.
        #[test]
        fn matches_a_byte_model(ops in proptest::collection::vec((0u64..2, 0usize..2, 0u8..3, 0u64..40, 0u64..40), 1..80)) {
            const SPACES: [LockSpace; 2] = [LockSpace::Record, LockSpace::Flock];
            let mut t = LockTable::default();
            let mut model = vec![vec![vec![None; 40]; 2]; 2];
            for (owner, space, kind, a, b) in ops {
                let kind = [LockKind::Read, LockKind::Write, LockKind::Unlock][kind as usize];
                let (start, end) = (a.min(b), a.max(b));
                let other = 1 - owner as usize;
                let clash = kind != LockKind::Unlock && (start..=end).any(|x| match model[other][space][x as usize] {
                    Some(LockKind::Write) => true,
                    Some(_) => kind == LockKind::Write,
                    None => false,
                });
                let before = t.clone();
                let r = t.set(F, ClientId(owner), 0, spaced(SPACES[space], kind, start, end));
                prop_assert_eq!(r.is_err(), clash);
                if clash {
                    prop_assert_eq!(&t, &before);
                    continue;
                }
                for x in start..=end {
                    model[owner as usize][space][x as usize] = (kind != LockKind::Unlock).then_some(kind);
                }
                for (o, spaces) in model.iter().enumerate() {
                    for (sp, row) in spaces.iter().enumerate() {
                        for (x, want) in row.iter().enumerate() {
                            let byte = spaced(SPACES[sp], LockKind::Read, x as u64, x as u64);
                            let held = t.by_inode.get(&F).and_then(|v| v.iter().find(|h| h.client == ClientId(o as u64) && h.overlaps(&byte)).map(|h| h.range.kind));
                            prop_assert_eq!(held, *want, "owner {} space {} byte {}", o, sp, x);
                        }
                    }
                }
            }
        }
    }
}
