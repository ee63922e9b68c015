//! Statahead: a directory's entries fetched ahead of the lookups that will ask for them.
//!
//! A program that stats or opens many names of one directory by name (`stat` in a loop,
//! `ls -l` after the kernel forgot its entries, a backup tool walking a file list) costs one
//! metaserver round trip per name. After a few lookups in one directory have gone to the
//! metaserver, the mount fetches a window of the directory's entries with their attributes
//! in one listing; the lookups that follow are answered from it.
//!
//! What an answer from here may be is what the kernel's own entry cache may be: a name as
//! the metaserver had it at most the attribute timeout ago. So each fetched entry answers at
//! most one lookup, within that timeout from its fetch, and only with "it exists" (a new
//! name created by another mount shows at once). Names this mount changes itself are
//! forgotten as it changes them, including those of a listing in flight. Windows grow while
//! the lookups use them and stop for a while in a directory where they do not.
//!
//! This module only decides; the client does the fetching. Time comes in as arguments.

use lattice_common::fs::MAX_READDIR;
use lattice_common::ids::InodeId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Lookups of existing names in one directory that go to the metaserver before a window
/// of its entries is fetched.
const TRIGGER: u32 = 4;
/// Entries in a directory's first window; each window that was at least half used doubles
/// the next, up to a listing's limit.
const FIRST_WINDOW: u32 = 128;
/// A window of which fewer than one entry in this many answered a lookup shows lookups in
/// no order the listing follows: the directory gets no statahead for `COLD`.
const COLD_RATIO: u32 = 8;
const COLD: Duration = Duration::from_secs(10);
/// Fetched entries kept at most (the rest of a window is dropped).
const MAX_ENTRIES: usize = 1 << 16;
/// Directories tracked at most (beyond it, those quiet for the attribute timeout go).
const MAX_DIRS: usize = 4096;

/// A window of a directory to fetch: entries after `cookie`, at most `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub dir: InodeId,
    pub cookie: u64,
    pub limit: u32,
    /// Names forgotten after this count went up are not taken from the listing.
    epoch: u64,
}

/// A lookup answered from a window: the inode, when it was fetched, and the window to fetch
/// next, if it is time for one.
#[derive(Debug, PartialEq, Eq)]
pub struct Hit {
    pub ino: InodeId,
    pub fetched: Instant,
    pub next: Option<Window>,
}

struct DirState {
    /// Lookups of existing names that went to the metaserver since the last window.
    misses: u32,
    /// Lookups answered from the last window.
    hits: u32,
    /// The size of the last window asked for (0: none yet), and the entries it brought.
    window: u32,
    got: u32,
    /// Where the next window starts, and whether the last one reached the end.
    next_cookie: u64,
    ended: bool,
    fetching: bool,
    cold_until: Option<Instant>,
    last_seen: Instant,
}

pub struct Statahead {
    ttl: Duration,
    entries: HashMap<(InodeId, Vec<u8>), (InodeId, Instant)>,
    dirs: HashMap<InodeId, DirState>,
    /// Counts forgotten names; a listing asked for before a name was forgotten must not
    /// bring it back.
    epoch: u64,
    /// Names forgotten while listings were in flight, with the epoch of their forgetting.
    forgotten: HashMap<(InodeId, Vec<u8>), u64>,
    /// The epoch of the last `clear`: windows asked for before it are dropped.
    cleared: u64,
    in_flight: usize,
    /// When this mount last changed each inode (its data, attributes or entries): an entry
    /// of a window asked for before then holds attributes from before the change.
    changed: HashMap<InodeId, Instant>,
}

impl Statahead {
    pub fn new(ttl: Duration) -> Statahead {
        Statahead {
            ttl,
            entries: HashMap::new(),
            dirs: HashMap::new(),
            epoch: 0,
            forgotten: HashMap::new(),
            cleared: 0,
            in_flight: 0,
            changed: HashMap::new(),
        }
    }

    /// The inode a fetched entry gives for `name` in `dir`, and when it was fetched; the
    /// entry is used up. Once half a window is used, the next is asked for with it.
    pub fn take(&mut self, dir: InodeId, name: &[u8], now: Instant) -> Option<Hit> {
        let (ino, fetched) = self.entries.remove(&(dir, name.to_vec()))?;
        if now.saturating_duration_since(fetched) >= self.ttl
            || self.changed.get(&ino).is_some_and(|at| *at >= fetched)
        {
            return None;
        }
        let d = self.dirs.get_mut(&dir)?;
        d.hits += 1;
        d.last_seen = now;
        let next = if !d.ended && !d.fetching && d.hits.saturating_mul(2) >= d.got {
            self.next_window(dir, now)
        } else {
            None
        };
        Some(Hit { ino, fetched, next })
    }

    /// Notes a lookup of an existing name in `dir` that went to the metaserver; says which
    /// window to fetch, if it is time for one.
    pub fn missed(&mut self, dir: InodeId, now: Instant) -> Option<Window> {
        if self.dirs.len() >= MAX_DIRS && !self.dirs.contains_key(&dir) {
            let ttl = self.ttl;
            self.dirs
                .retain(|_, d| d.fetching || now.saturating_duration_since(d.last_seen) < ttl);
            if self.dirs.len() >= MAX_DIRS {
                return None;
            }
        }
        let d = self.dirs.entry(dir).or_insert(DirState {
            misses: 0,
            hits: 0,
            window: 0,
            got: 0,
            next_cookie: 0,
            ended: false,
            fetching: false,
            cold_until: None,
            last_seen: now,
        });
        d.last_seen = now;
        if d.cold_until.is_some_and(|t| now < t) {
            return None;
        }
        d.misses += 1;
        if d.fetching || d.misses < TRIGGER {
            return None;
        }
        self.next_window(dir, now)
    }

    /// The next window of `dir`: the first, one twice as big as the last if that was at
    /// least half used, or none for a while if it was hardly used.
    fn next_window(&mut self, dir: InodeId, now: Instant) -> Option<Window> {
        let d = self.dirs.get_mut(&dir)?;
        let limit = if d.window == 0 {
            FIRST_WINDOW
        } else if d.hits.saturating_mul(COLD_RATIO) < d.got {
            d.cold_until = Some(now + COLD);
            d.window = 0;
            d.misses = 0;
            return None;
        } else if d.hits.saturating_mul(2) >= d.got {
            d.window.saturating_mul(2).min(MAX_READDIR)
        } else {
            d.window
        };
        if d.ended {
            d.next_cookie = 0;
        }
        d.window = limit;
        d.misses = 0;
        d.hits = 0;
        d.fetching = true;
        self.in_flight += 1;
        Some(Window {
            dir,
            cookie: d.next_cookie,
            limit,
            epoch: self.epoch,
        })
    }

    /// Takes in a fetched window: `names` as (name, inode, cookie) in listing order, fetched
    /// at `at` (`None`: the fetch failed).
    pub fn fetched(&mut self, w: Window, names: Option<Vec<(Vec<u8>, InodeId, u64)>>, at: Instant) {
        let dropped = w.epoch < self.cleared;
        if let Some(d) = self.dirs.get_mut(&w.dir) {
            d.fetching = false;
            match &names {
                // A window from before a lock says nothing: the next starts afresh.
                _ if dropped => {
                    d.window = 0;
                    d.got = 0;
                }
                Some(names) => {
                    d.got = names.len() as u32;
                    d.ended = names.len() < w.limit as usize;
                    if let Some((_, _, cookie)) = names.last() {
                        d.next_cookie = *cookie;
                    }
                }
                // A directory this mount may not list (or a metaserver change) waits a
                // while, then starts afresh.
                None => {
                    d.window = 0;
                    d.got = 0;
                    d.cold_until = Some(at + COLD);
                }
            }
        }
        if let Some(names) = names.filter(|_| !dropped) {
            let ttl = self.ttl;
            if self.entries.len() + names.len() > MAX_ENTRIES {
                self.entries
                    .retain(|_, (_, t)| at.saturating_duration_since(*t) < ttl);
            }
            for (name, ino, _) in names {
                if self.entries.len() >= MAX_ENTRIES {
                    break;
                }
                let key = (w.dir, name);
                if self.forgotten.get(&key).is_some_and(|e| *e > w.epoch) {
                    continue;
                }
                self.entries.insert(key, (ino, at));
            }
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.forgotten.clear();
        }
    }

    /// Forgets every entry fetched so far, and those on their way: a lock was taken, and
    /// what its holder sees from now on must be newer than the lock (another mount may
    /// have changed the directory just before releasing it; SQLite checks for a journal
    /// right after taking its lock).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.epoch += 1;
        self.cleared = self.epoch;
    }

    /// Notes that this mount changed `ino` at `now` (a write was closed, its attributes
    /// set, an entry of it made or removed): windows asked for before then do not answer
    /// for it.
    pub fn changed(&mut self, ino: InodeId, now: Instant) {
        if self.changed.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            self.changed
                .retain(|_, at| now.saturating_duration_since(*at) < ttl);
            if self.changed.len() >= MAX_ENTRIES {
                // Forgetting a change could revive what it made stale: forget the windows.
                self.clear();
                self.changed.clear();
            }
        }
        self.changed.insert(ino, now);
    }

    /// Forgets `name` in `dir`: this mount changed it at `now` (and so the directory, and
    /// the inode the name had here). Returns that inode.
    pub fn forget(&mut self, dir: InodeId, name: &[u8], now: Instant) -> Option<InodeId> {
        self.epoch += 1;
        let key = (dir, name.to_vec());
        let had = self.entries.remove(&key).map(|(ino, _)| ino);
        if self.in_flight > 0 {
            self.forgotten.insert(key, self.epoch);
        }
        self.changed(dir, now);
        if let Some(ino) = had {
            self.changed(ino, now);
        }
        had
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(1);
    const D: InodeId = InodeId(7);

    fn names(from: u64, n: u64) -> Vec<(Vec<u8>, InodeId, u64)> {
        (from..from + n)
            .map(|i| (format!("f{i}").into_bytes(), InodeId(1000 + i), i + 1))
            .collect()
    }

    /// Misses until a window is asked for.
    fn trigger(s: &mut Statahead, now: Instant) -> Window {
        for _ in 1..TRIGGER {
            assert_eq!(s.missed(D, now), None);
        }
        s.missed(D, now).expect("a window after TRIGGER misses")
    }

    /// The inode a lookup of `name` gets from the windows.
    fn ino(s: &mut Statahead, name: &str, now: Instant) -> Option<InodeId> {
        s.take(D, name.as_bytes(), now).map(|h| h.ino)
    }

    #[test]
    fn a_window_follows_a_few_misses_and_answers_each_name_once() {
        let mut s = Statahead::new(TTL);
        let t0 = Instant::now();
        let w = trigger(&mut s, t0);
        assert_eq!((w.cookie, w.limit), (0, FIRST_WINDOW));
        // No second window while one is in flight.
        assert_eq!(s.missed(D, t0), None);
        s.fetched(w, Some(names(0, 10)), t0);
        let hit = s.take(D, b"f3", t0).expect("fetched");
        assert_eq!((hit.ino, hit.fetched, hit.next), (InodeId(1003), t0, None));
        assert_eq!(ino(&mut s, "f3", t0), None, "an entry answers once");
        assert_eq!(ino(&mut s, "nope", t0), None);
        assert_eq!(
            s.take(InodeId(8), b"f4", t0),
            None,
            "entries are per directory"
        );
        assert_eq!(
            ino(&mut s, "f4", t0 + TTL),
            None,
            "not past the attribute timeout"
        );
    }

    #[test]
    fn the_next_window_goes_out_when_half_of_one_is_used_and_twice_as_big() {
        let mut s = Statahead::new(TTL);
        let t0 = Instant::now();
        let w = trigger(&mut s, t0);
        s.fetched(w, Some(names(0, 128)), t0);
        for i in 0..63 {
            assert_eq!(
                s.take(D, format!("f{i}").as_bytes(), t0).unwrap().next,
                None
            );
        }
        let next = s
            .take(D, b"f63", t0)
            .unwrap()
            .next
            .expect("the next window");
        assert_eq!((next.cookie, next.limit), (128, 256));
        // The rest of the first window still answers while the next is on its way.
        assert_eq!(ino(&mut s, "f64", t0), Some(InodeId(1064)));
        s.fetched(next, Some(names(128, 256)), t0);
        assert_eq!(ino(&mut s, "f300", t0), Some(InodeId(1300)));
    }

    #[test]
    fn windows_stop_for_a_while_in_a_directory_where_they_are_not_used() {
        let mut s = Statahead::new(TTL);
        let t0 = Instant::now();
        let w = trigger(&mut s, t0);
        s.fetched(w, Some(names(0, 128)), t0);
        // Lookups in no order the listing follows: one hit in 128.
        assert!(ino(&mut s, "f100", t0).is_some());
        for _ in 0..TRIGGER {
            assert_eq!(s.missed(D, t0), None);
        }
        assert_eq!(s.missed(D, t0 + COLD - TTL), None, "cold for a while");
        let w = trigger(&mut s, t0 + COLD);
        assert_eq!(w.limit, FIRST_WINDOW, "then it starts small again");
    }

    #[test]
    fn a_listing_that_ended_starts_over() {
        let mut s = Statahead::new(TTL);
        let t0 = Instant::now();
        let w = trigger(&mut s, t0);
        s.fetched(w, Some(names(0, 100)), t0);
        for i in 0..100 {
            let hit = s.take(D, format!("f{i}").as_bytes(), t0).unwrap();
            assert_eq!(hit.next, None, "nothing follows the end");
        }
        let w = trigger(&mut s, t0);
        assert_eq!(w.cookie, 0);
    }

    #[test]
    fn names_this_mount_changes_are_forgotten_even_from_a_listing_in_flight() {
        let mut s = Statahead::new(TTL);
        let t0 = Instant::now();
        let w = trigger(&mut s, t0);
        s.fetched(w, Some(names(0, 10)), t0);
        assert_eq!(s.forget(D, b"f1", t0), Some(InodeId(1001)));
        assert_eq!(ino(&mut s, "f1", t0), None);
        // f5 is unlinked while the next listing is on its way, which may predate it.
        for i in 0..10 {
            ino(&mut s, &format!("f{i}"), t0);
        }
        let w = trigger(&mut s, t0);
        s.forget(D, b"f5", t0);
        s.fetched(w, Some(names(0, 10)), t0);
        assert_eq!(ino(&mut s, "f5", t0), None);
        assert!(ino(&mut s, "f6", t0).is_some());
        // With nothing in flight, forgetting leaves nothing behind.
        assert!(s.forgotten.is_empty());
        s.forget(D, b"f7", t0);
        assert!(s.forgotten.is_empty());
        assert_eq!(ino(&mut s, "f7", t0), None);
    }

    #[test]
    fn a_lock_clears_the_windows_fetched_and_on_their_way() {
        let mut s = Statahead::new(TTL);
        let t0 = Instant::now();
        let w = trigger(&mut s, t0);
        s.fetched(w, Some(names(0, 128)), t0);
        let next = (0..64)
            .find_map(|i| s.take(D, format!("f{i}").as_bytes(), t0).unwrap().next)
            .expect("the next window");
        s.clear();
        assert_eq!(ino(&mut s, "f100", t0), None);
        s.fetched(next, Some(names(128, 256)), t0);
        assert_eq!(
            ino(&mut s, "f200", t0),
            None,
            "a window asked for before the lock"
        );
        let w = trigger(&mut s, t0);
        s.fetched(w, Some(names(0, 10)), t0);
        assert!(
            ino(&mut s, "f5", t0).is_some(),
            "windows asked for after it"
        );
    }

    #[test]
    fn an_inode_changed_here_after_its_window_was_asked_for_is_not_answered() {
        let mut s = Statahead::new(TTL);
        let t0 = Instant::now();
        let w = trigger(&mut s, t0);
        // A window asked for at t0 lands after this mount closed a write to f3.
        s.changed(InodeId(1003), t0 + Duration::from_millis(1));
        s.fetched(w, Some(names(0, 10)), t0);
        assert_eq!(ino(&mut s, "f3", t0), None);
        assert!(ino(&mut s, "f4", t0).is_some());
        // One asked for after the change answers for it.
        for i in 0..10 {
            ino(&mut s, &format!("f{i}"), t0);
        }
        let later = t0 + Duration::from_millis(2);
        let w = trigger(&mut s, later);
        s.fetched(w, Some(names(0, 10)), later);
        assert_eq!(ino(&mut s, "f3", later), Some(InodeId(1003)));
    }

    #[test]
    fn a_failed_fetch_waits_a_while_then_starts_afresh() {
        let mut s = Statahead::new(TTL);
        let t0 = Instant::now();
        let w = trigger(&mut s, t0);
        s.fetched(w, None, t0);
        for _ in 0..TRIGGER {
            assert_eq!(s.missed(D, t0), None);
        }
        let w = trigger(&mut s, t0 + COLD);
        assert_eq!((w.cookie, w.limit), (0, FIRST_WINDOW));
    }
}
